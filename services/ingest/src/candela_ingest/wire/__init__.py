"""The log wire format: the checks every record passes, protobuf varints and tags, and the C decoder
(`_logwire`) that reads LogMessage bytes without building protobuf objects."""
