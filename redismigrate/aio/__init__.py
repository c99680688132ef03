"""The async I/O layer: every Redis command redismigrate sends goes through here."""
