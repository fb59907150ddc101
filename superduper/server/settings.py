"""What ``superduper serve`` is told: where to listen, who may call without a key, and how big a request may be."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field


class ServeSettings(BaseModel):
    host: str = Field(default='127.0.0.1', description='address to listen on')
    port: int = Field(default=8000, ge=0, le=65535, description='port to listen on (0: any free port)')
    anonymous: Literal['none', 'read', 'write'] = Field(
        default='none', description="what a request without an API key may do: 'none', 'read' or 'write' "
        '(admin always needs a key)')
    max_body_bytes: int = Field(default=16 * 2**20, gt=0, description='largest JSON request body')
    max_upload_bytes: int = Field(default=512 * 2**20, gt=0, description='largest package upload')
    threads: int = Field(default=max(4, 2 * (os.cpu_count() or 1)), gt=0, description='requests computed at once, '
                         'each in a thread of its own (the rest wait their turn: more threads than cores contend '
                         'for the interpreter)')
    max_rows: int = Field(default=10_000, gt=0, description='most rows one request may read or write')
    status_cache_seconds: float = Field(default=1.0, ge=0, description='how long listener status is reused by '
                                        'metrics and the console')
