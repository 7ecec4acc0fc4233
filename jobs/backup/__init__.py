"""MongoDB backups: the mongodump archive format, the native dump engine, retention."""
