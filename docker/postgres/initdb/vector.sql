-- Run once, when the database is made (docker-compose.yml mounts this folder as the postgres service's
-- /docker-entrypoint-initdb.d): pgvector in kbqa's database, created by the superuser, so that kbqa's
-- own user need not be one.
CREATE EXTENSION IF NOT EXISTS vector;
