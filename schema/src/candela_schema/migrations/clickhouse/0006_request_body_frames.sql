-- Where a compressed body's zstd frame sits in its packed object (BodyRef.frame_offset / frame_length).
--
-- Ingest packs a batch's bodies as a sequence of independent zstd frames, each holding consecutive bodies.
-- When *_body_frame_length > 0 the body is in the frame at [frame_offset, frame_offset + frame_length) of
-- the object, and *_body_offset / *_body_length are its place inside the decompressed frame. Rows written
-- before this migration read back 0 / 0: their offset and length are the body's bytes in the object itself
-- (objects were plain concatenations then), and they keep reading that way.
--
-- One ALTER with every column: ClickHouse checks all of its clauses before changing anything, so the
-- file either adds them all or none (18.16 has no ADD COLUMN IF NOT EXISTS to make a rerun harmless).
ALTER TABLE requests
    ADD COLUMN request_body_frame_offset UInt64,
    ADD COLUMN request_body_frame_length UInt64,
    ADD COLUMN response_body_frame_offset UInt64,
    ADD COLUMN response_body_frame_length UInt64;
