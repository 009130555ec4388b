"""The independent oracle: expected values computed with torch built-ins, tiktoken and small obviously
correct reference code. Nothing here may import `cs336_basics`."""
