"""MongoDB: data backend (``data_backend``), metadata store (``metadata``), GridFS artifact store (``artifacts``)
and change streams (``change_stream``), for ``mongodb://``, ``mongodb+srv://`` and ``mongomock://`` URIs.

pymongo (and mongomock for ``mongomock://``) are imported only when such a URI is used.
"""
