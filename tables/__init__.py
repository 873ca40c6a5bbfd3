"""RocksDB-backed Faust tables (delay, retry, held, entry state, DLQ index) and their helpers,
installed as ``walstream.tables``."""
