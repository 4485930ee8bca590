"""opendisco.rerank."""
