"""Embedding, the knowledge base on disk, and search."""

from retrieval.answerability import Signals
from retrieval.calibration import Calibration, LogisticModel, find_calibration
from retrieval.catalog import KnowledgeBaseCatalog, KnowledgeBaseInfo, validate_name
from retrieval.embedders import Embedder, EmbeddingConfig, load_embedder
from retrieval.errors import (
    DatabaseError,
    DatabaseUnavailable,
    DocumentNotFound,
    EmbeddingMismatch,
    InvalidName,
    KnowledgeBaseBusy,
    KnowledgeBaseError,
    KnowledgeBaseExists,
    KnowledgeBaseNotFound,
)
from retrieval.index_backends import VectorStoreConfig, new_store
from retrieval.knowledge_base import ConsistencyReport, KnowledgeBase, ScoredChunk
from retrieval.manifest import EmbeddingIdentity, Manifest, VectorStore
from retrieval.metadata import check_groups, check_metadata, groups_visible, parse_pairs
from retrieval.open_bases import OpenKnowledgeBases
from retrieval.query_batcher import BatchingEmbedder, QueryBatchConfig
from retrieval.reranker import Reranker, RerankerConfig
from retrieval.retriever import Retriever
from retrieval.search_types import Retrieval, RetrievalConfig, SearchHit, SearchOptions
from retrieval.store import ChunkLike, ChunkRecord, DocumentRecord, NewDocument, WriteResult
from retrieval.store_base import chunk_terms
from retrieval.text_rules import CJK_CHAR, CJK_IDEOGRAPHS, CJK_PUNCTUATION, EAST_ASIAN, fold, split_sentences
from retrieval.timestamps import utc_now

__all__ = [
    "CJK_CHAR",
    "CJK_IDEOGRAPHS",
    "CJK_PUNCTUATION",
    "EAST_ASIAN",
    "BatchingEmbedder",
    "Calibration",
    "ChunkLike",
    "ChunkRecord",
    "ConsistencyReport",
    "DatabaseError",
    "DatabaseUnavailable",
    "DocumentNotFound",
    "DocumentRecord",
    "Embedder",
    "EmbeddingConfig",
    "EmbeddingIdentity",
    "EmbeddingMismatch",
    "InvalidName",
    "KnowledgeBase",
    "KnowledgeBaseBusy",
    "KnowledgeBaseCatalog",
    "KnowledgeBaseError",
    "KnowledgeBaseExists",
    "KnowledgeBaseInfo",
    "KnowledgeBaseNotFound",
    "LogisticModel",
    "Manifest",
    "NewDocument",
    "OpenKnowledgeBases",
    "QueryBatchConfig",
    "Reranker",
    "RerankerConfig",
    "Retrieval",
    "RetrievalConfig",
    "Retriever",
    "ScoredChunk",
    "SearchHit",
    "SearchOptions",
    "Signals",
    "VectorStore",
    "VectorStoreConfig",
    "WriteResult",
    "check_groups",
    "chunk_terms",
    "check_metadata",
    "find_calibration",
    "fold",
    "groups_visible",
    "load_embedder",
    "new_store",
    "parse_pairs",
    "split_sentences",
    "utc_now",
    "validate_name",
]
