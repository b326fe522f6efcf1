"""Public test fakes and fixtures for smartsyncd and for applications that embed its client:
an in-memory metadata store (``memory_store``) and an in-memory LDAP directory (``ldapserver``)."""
