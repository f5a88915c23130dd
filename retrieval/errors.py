"""Errors of the knowledge-base layer; each message is meant to be shown to the user as it is."""


class KnowledgeBaseError(Exception):
    """Base class of every knowledge-base error."""


class KnowledgeBaseNotFound(KnowledgeBaseError):
    """The named knowledge base does not exist."""


class KnowledgeBaseExists(KnowledgeBaseError):
    """A knowledge base of that name already exists."""


class InvalidName(KnowledgeBaseError):
    """A knowledge-base name that is not allowed."""


class EmbeddingMismatch(KnowledgeBaseError):
    """The knowledge base was built with another embedding model than the one in use."""


class KnowledgeBaseBusy(KnowledgeBaseError):
    """Another process is writing to the knowledge base."""


class DocumentNotFound(KnowledgeBaseError):
    """No document with that id in the knowledge base."""


class DatabaseUnavailable(KnowledgeBaseError):
    """The PostgreSQL store cannot be reached now (down, restarting, or a wrong address); try again later."""


class DatabaseError(KnowledgeBaseError):
    """The PostgreSQL store cannot be used as it is (its schema is newer than kbqa, pgvector is missing)."""
