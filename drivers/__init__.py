"""Pool drivers: unprivileged code that decides what to do with storage."""
