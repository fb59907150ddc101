"""Stored code this deployment did not sign (a database written before signatures, or by another deployment):
found, described, and signed when the user says so (``superduper trust URI [--yes]``)."""

from __future__ import annotations

import hashlib
from typing import Any

from superduper.base.exceptions import NotFound
from superduper.base.package import pickled_globals, torch_pickled_globals
from superduper.base.trust import sign, signed
from superduper.components.component import artifact_refs


def unsigned_code(metadata: Any, artifacts: Any) -> list[dict]:
    """Every code artifact of the stored components that this deployment has not signed: the component, the key,
    what loading it would import, and whether its bytes are still those its key names."""
    found = []
    for row in metadata.all():
        for ref in artifact_refs(row['record']):
            key = ref['_artifact']
            if signed('artifact', key, ref.get('signature')):
                continue
            try:
                data = artifacts.get_bytes(key)
            except NotFound:
                data = None
            intact = data is not None and hashlib.sha256(data).hexdigest() == key
            reader = torch_pickled_globals if ref.get('serializer') == 'torch' else pickled_globals
            found.append({'uuid': row['uuid'], 'type_id': row['type_id'], 'identifier': row['identifier'],
                          'version': row['version'], 'key': key, 'intact': intact,
                          'imports': sorted(reader(data)) if intact else []})
    return found


def sign_stored_code(metadata: Any, entries: list[dict]) -> int:
    """Sign these code artifacts (from ``unsigned_code``, intact ones only) in their records; how many."""
    keys = {e['key'] for e in entries if e['intact']}
    signed_count = 0
    for uuid in dict.fromkeys(e['uuid'] for e in entries if e['intact']):
        row = metadata.get_by_uuid(uuid)
        for ref in artifact_refs(row['record']):
            if ref['_artifact'] in keys:
                ref['signature'] = sign('artifact', ref['_artifact'])
                signed_count += 1
        metadata.replace_record(uuid, row['record'])
    return signed_count
