"""Dataset-preparation scripts: captioning, tagging, tag editing, metadata, buckets and latents."""
