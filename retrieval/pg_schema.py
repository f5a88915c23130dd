"""The schema kbqa keeps in PostgreSQL, as the steps that make it: step n brings a database at version
n - 1 to version n, and `postgres.py` runs the missing steps in order under its schema lock.

A database already past a step never runs it again, so a change to the schema is a new step at the end.
"""

MIGRATIONS: list[str] = [
    # 1: knowledge bases, documents, chunks with their vectors, the lexical terms.
    """
    CREATE TABLE knowledge_bases (
        id SERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        manifest JSONB NOT NULL,
        generation BIGINT NOT NULL DEFAULT 0,       -- write transactions committed (caches compare it)
        chunk_count BIGINT NOT NULL DEFAULT 0,      -- BM25's N, kept with each write
        token_total BIGINT NOT NULL DEFAULT 0,      -- BM25's total length, kept with each write
        lexical_version INTEGER NOT NULL,
        -- Ids are the knowledge base's own, as in its SQLite file (AUTOINCREMENT: never reused), so a
        -- migration between the stores keeps them.
        next_document_id BIGINT NOT NULL DEFAULT 1,
        next_chunk_id BIGINT NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL
    );
    CREATE TABLE documents (
        kb_id INTEGER NOT NULL REFERENCES knowledge_bases(id) ON DELETE CASCADE,
        id BIGINT NOT NULL,
        source TEXT NOT NULL,
        title TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        size BIGINT NOT NULL,
        page_count INTEGER,
        chunk_count INTEGER NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        metadata JSONB NOT NULL DEFAULT '{}',
        PRIMARY KEY (kb_id, id),
        UNIQUE (kb_id, source)
    );
    CREATE INDEX documents_by_hash ON documents(kb_id, content_hash);
    CREATE TABLE chunks (
        kb_id INTEGER NOT NULL,
        id BIGINT NOT NULL,
        document_id BIGINT NOT NULL,
        ordinal INTEGER NOT NULL,
        text TEXT NOT NULL,
        page INTEGER,
        heading_path TEXT NOT NULL,
        start_offset INTEGER NOT NULL,
        end_offset INTEGER NOT NULL,
        ocr BOOLEAN NOT NULL DEFAULT FALSE,
        tokens INTEGER NOT NULL,                    -- BM25's length of this chunk (its lexical tokens)
        embedding vector NOT NULL,                  -- each knowledge base has its HNSW index (of its dimension)
        PRIMARY KEY (kb_id, id),
        FOREIGN KEY (kb_id, document_id) REFERENCES documents(kb_id, id) ON DELETE CASCADE
    );
    CREATE INDEX chunks_by_document ON chunks(kb_id, document_id, ordinal);
    CREATE TABLE chunk_terms (
        kb_id INTEGER NOT NULL,
        term TEXT NOT NULL,
        chunk_id BIGINT NOT NULL,
        tf INTEGER NOT NULL,
        PRIMARY KEY (kb_id, term, chunk_id),
        FOREIGN KEY (kb_id, chunk_id) REFERENCES chunks(kb_id, id) ON DELETE CASCADE
    );
    CREATE INDEX chunk_terms_by_chunk ON chunk_terms(kb_id, chunk_id);
    """,
    # 2: the shared ingestion queue, the files uploaded with its jobs, and the documents' originals.
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kb TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        inputs JSONB NOT NULL,                      -- [{source, name}], in the order of `uploads.ordinal`
        metadata JSONB,
        force BOOLEAN NOT NULL,
        files_done INTEGER NOT NULL DEFAULT 0,
        chunks_done INTEGER NOT NULL DEFAULT 0,
        files JSONB NOT NULL DEFAULT '[]',
        error TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        seq BIGSERIAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        chunks_stored INTEGER NOT NULL DEFAULT 0,
        worker TEXT,                                -- who holds the lease of a running job
        lease_until TIMESTAMPTZ,                    -- past it, another worker may claim the job
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        reading TEXT                                -- the page OCR reads now, for every node to show
    );
    CREATE INDEX jobs_by_kb ON jobs(kb, seq);
    CREATE INDEX jobs_by_status ON jobs(status, seq);
    CREATE TABLE uploads (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        ordinal INTEGER NOT NULL,
        source TEXT NOT NULL,
        content BYTEA NOT NULL,
        PRIMARY KEY (job_id, ordinal)
    );
    CREATE TABLE originals (
        kb_id INTEGER NOT NULL REFERENCES knowledge_bases(id) ON DELETE CASCADE,
        source TEXT NOT NULL,
        content BYTEA NOT NULL,
        PRIMARY KEY (kb_id, source)
    );
    """,
    # 3: access groups: a document's (sorted; empty: every reader of its knowledge base sees it) and those a
    # job gives its documents (NULL: each keeps its own).
    """
    ALTER TABLE documents ADD COLUMN access_groups TEXT[] NOT NULL DEFAULT '{}';
    CREATE INDEX documents_by_groups ON documents USING GIN (access_groups);
    ALTER TABLE jobs ADD COLUMN access_groups JSONB;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
