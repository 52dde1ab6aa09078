"""The HTTP server (Azure AI Model Inference API), the `ember` command line and model management.
Imports engine/ and tokenizer/; imported only by its own entry points and tests."""
