"""Is the chain of thought load-bearing? Necessity against filler, added mistakes, paraphrase, and where the
answer is decodable in the hidden states; each an eval measure (``thinkaloud eval --measures ...``)."""
