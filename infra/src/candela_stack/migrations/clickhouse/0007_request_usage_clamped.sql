-- Whether the provider reported a token count no log can hold (negative, fractional, or above the UInt32
-- columns, alone or in the total): the proxy then stores the counts as 0, leaves the request unpriced and
-- sets LogRecord.usage_clamped, so the log is kept and says so. Rows written before read back 0.
ALTER TABLE requests
    ADD COLUMN usage_clamped UInt8;
