"""Key operations: rotate the key-encryption key, retire an old one, show which backups use
which key (the ``keys`` verb of the CLI, and ``encryption.auto_rotate`` in ``dr_monitor``).

- :mod:`.store`: where the key ring lives (a key file, an Airflow connection) and whether
  this process can write it; :func:`.store.rotate` adds a fresh key and makes it active.
- :mod:`.rewrap`: moves every backup still under a key to the active key at a target
  (payload re-encrypted chunk by chunk, manifest re-signed), resumable per backup.
- :mod:`.usage`: which backups, at which target, of which source, use each key; the check
  that refuses to delete a key any backup still needs.
- :mod:`.audit`: the hook every key change calls (a future audit trail plugs in there).

See docs/keys.md.
"""
