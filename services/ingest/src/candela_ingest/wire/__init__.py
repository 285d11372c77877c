"""The log wire format: the checks every record passes (validation), protobuf varints and field numbers
(varint, tags), and the decoder that reads LogMessage and IngestRequest bytes without building protobuf
objects, behind one door (logwire): the C extension (_logwire.c) or, with CANDELA_NO_EXTENSIONS=1, its
pure-Python twin (_logwire_py.py), the reference it is tested and fuzzed against."""
