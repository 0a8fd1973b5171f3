"""Where chunks live: the ``ChunkStore`` interface (``base``) and its adapters: ``chroma`` (embedded or
server), ``snapshot`` (the read-only copy queries use without chromadb), ``memory`` (tests); plus the
BM25 side index (``lexical``) and kb's write stamp (``stamp``)."""
