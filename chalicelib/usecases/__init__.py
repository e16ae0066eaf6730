"""The use cases on one skeleton; they take one typed Kit."""
