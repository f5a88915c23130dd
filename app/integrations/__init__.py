"""kbqa where people already work: a LangChain retriever (`langchain_retriever`) and an MCP server
(`mcp_server`). Each imports its framework only when used (the `langchain` and `mcp` extras)."""
