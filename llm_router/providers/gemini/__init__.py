"""``type: gemini``: Google's Gemini API, natively (``generateContent``), not through its
beta OpenAI-compatible endpoint.

The router posts to ``{base_url}/v1beta/models/{model}:generateContent`` (streams:
``:streamGenerateContent?alt=sse``; embeddings: ``:batchEmbedContents``) with the key as
``x-goog-api-key``. The modules of this folder, data in and data out:
:mod:`.request` (hub → Gemini request), :mod:`.answer` (answers and streams → hub),
:mod:`.errors` (Google errors → status and retry hint), :mod:`.embed`, :mod:`.models`
(the paginated model list), :mod:`.wire`, which runs one exchange with them, and
:mod:`.api` (URLs, auth, ``send``). Vertex
AI's Gemini models take the same bodies (``providers/vertex``).
"""
