"""The tool-using assistant: the LangGraph agent, its tools and the bounded calculator."""
