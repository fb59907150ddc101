"""The ``video`` field type: files kept in the artifact store (once, collected with their rows), read back as
``Video`` values whose metadata and frames are read lazily; a listener over frames; bad files refused naming the
table, field and row, with nothing written; frames encoded on insert; videos over the REST API."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest

from superduper import ObjectModel, Table, Video
from superduper.base.exceptions import InvalidValue

av = pytest.importorskip('av', reason='video fields need the video extra')

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (20, 40, 60), (255, 255, 255)]
TOLERANCE = 8  # H.264 with 4:2:0 colour moves a solid colour by a few levels


def clip(colours=COLOURS, fps: int = 4, size=(32, 24), container: str = 'mp4', codec: str = 'libx264') -> bytes:
    """A video file made here with PyAV (not with superduper): one solid colour a frame."""
    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, mode='w', format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for colour in colours:
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), colour, np.uint8), format='rgb24')
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buffer.getvalue()


def mean_colours(video: Video) -> list[list[float]]:
    """The example model: each sampled frame's mean colour (every other frame, at most 8)."""
    return [frame.mean(axis=(0, 1)).round(1).tolist() for frame in video.frames(every=2, max_frames=8)]


def frame_count(video: Video) -> int:
    return video.frame_count


def assert_colours(frames, colours) -> None:
    got = [f.reshape(-1, 3).mean(axis=0) for f in frames]
    assert len(got) == len(colours)
    for g, c in zip(got, colours):
        assert np.abs(g - np.array(c)).max() <= TOLERANCE, (g, c)


def stored(db) -> set[str]:
    return {key.partition('/')[0] for key in db.artifact_store.keys()}


def test_videos_round_trip_through_the_artifact_store(db, pk, tmp_path):
    data = clip()
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / 'clip.mp4'
    path.write_bytes(data)
    other = clip(COLOURS[:2], container='webm', codec='libvpx-vp9')
    db.apply(Table('clips', fields={'name': 'str', 'clip': 'video'}))
    before = stored(db)
    ids = db['clips'].insert([{'name': 'bytes', 'clip': data}, {'name': 'path', 'clip': str(path)},
                              {'name': 'video', 'clip': Video(other)}, {'name': 'none', 'clip': None}]).execute()
    assert stored(db) - before == {digest, hashlib.sha256(other).hexdigest()}  # the same file is stored once

    rows = {r['name']: r for r in db['clips'].select().execute()}
    video = rows['bytes']['clip']
    assert isinstance(video, Video) and video.key == digest and video.format == 'mp4'
    assert video.data == data and rows['path']['clip'] == video and rows['none']['clip'] is None
    assert (video.frame_count, video.width, video.height, video.codec) == (6, 32, 24, 'h264')
    assert video.fps == 4 and video.duration == pytest.approx(1.5)
    assert_colours(video.frames(), COLOURS)
    webm = rows['video']['clip']
    assert (webm.format, webm.codec, webm.frame_count, webm.media_type) == ('webm', 'vp9', 2, 'video/webm')
    assert_colours(webm.frames(), COLOURS[:2])

    assert video.metadata == {'format': 'mp4', 'codec': 'h264', 'width': 32, 'height': 24, 'frame_count': 6,
                              'fps': 4.0, 'duration': 1.5}

    t = db['clips']
    t.filter(t[pk].isin(ids[:2])).delete().execute()
    assert db.collect_garbage(grace_seconds=0) == 1  # the mp4 no row refers to any more
    assert digest not in stored(db) and hashlib.sha256(other).hexdigest() in stored(db)
    t.filter(t[pk] == ids[2]).update({'clip': data}).execute()
    assert db.collect_garbage(grace_seconds=0) == 1  # the webm, replaced
    assert stored(db) - before == {digest} and t.get(**{pk: ids[2]}).execute()['clip'].frame_count == 6


def test_frames_are_sampled_lazily_and_bytes_fetched_once():
    data = clip()
    fetched = []

    def load(key: str) -> bytes:
        fetched.append(key)
        return data

    video = Video.stored('k' * 64, load, 'mp4')
    assert video.media_type == 'video/mp4' and fetched == []  # known from the row, nothing fetched
    frames = video.frames(every=2, max_frames=2)
    assert_colours(frames, [COLOURS[0], COLOURS[2]])
    assert_colours(video.frames(every=5), [COLOURS[0], COLOURS[5]])
    assert list(video.frames(max_frames=0)) == [] and fetched == ['k' * 64]
    assert next(video.frames()).shape == (24, 32, 3) and next(video.frames()).dtype == np.uint8
    assert repr(video) == 'Video(mp4/h264, 32x24, 6 frames, 4 fps, 1.5 s)'
    with pytest.raises(ValueError, match='every must be'):
        video.frames(every=0)
    import pickle

    copy = pickle.loads(pickle.dumps(video))  # another process gets the bytes, not the loader
    assert copy.data == data and copy.key is None


@pytest.mark.backends('any')
def test_a_listener_computes_features_of_sampled_frames(db):
    db.apply(Table('clips', fields={'clip': 'video'}))
    db['clips'].insert([{'clip': clip()}]).execute()
    listener = ObjectModel('mean-colours', object=mean_colours).to_listener(select=db['clips'].select(), key='clip',
                                                                            identifier='colours')
    db.apply(listener)
    db['clips'].insert([{'clip': clip(COLOURS[::-1])}]).execute()  # followed as it is written
    outputs = [r[listener.outputs] for r in db['clips'].select().outputs(listener.predict_id).execute()]
    expected = [[COLOURS[0], COLOURS[2], COLOURS[4]], [COLOURS[5], COLOURS[3], COLOURS[1]]]
    assert len(outputs) == 2
    for got in outputs:  # one output per video, in whichever order the rows come
        match = next(e for e in expected if np.abs(np.array(got) - np.array(e)).max() <= TOLERANCE)
        expected.remove(match)


@pytest.mark.backends('any', 'mongo')
def test_bad_videos_name_the_table_field_and_row_and_nothing_is_written(db, tmp_path):
    from PIL import Image

    db.apply(Table('clips', fields={'clip': 'video'}))
    good = clip()
    db['clips'].insert([{'clip': good}]).execute()
    before = stored(db)
    picture = io.BytesIO()
    Image.new('RGB', (8, 8)).save(picture, format='PNG')
    faststart = tmp_path / 'fast.mp4'  # the index first, so that a cut file opens and lacks frames
    with av.open(str(faststart), mode='w', format='mp4', options={'movflags': 'faststart'}) as out:
        stream = out.add_stream('libx264', rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 24, 'yuv420p'
        for colour in COLOURS:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((24, 32, 3), colour, np.uint8), format='rgb24')))
        out.mux(stream.encode())
    cases = [
        (b'not a video at all', 'not a video file'),
        (good[: len(good) // 2], 'not a video file'),  # the index (at the end) is gone
        (faststart.read_bytes()[:-300], 'not a whole video file'),
        (clip(container='webm', codec='libvpx-vp9')[:-120], 'not a whole video file'),
        (picture.getvalue(), 'not a video: an image'),
        (str(tmp_path / 'missing.mp4'), 'cannot read the video file'),
        (12, 'not a video: int'),
        ([np.zeros((4, 4, 3), np.float32)], 'frame 0: expected a uint8 RGB array'),
    ]
    for value, reason in cases:
        with pytest.raises(InvalidValue, match=rf"table 'clips', field 'clip', row 1: expected a video.*{reason}"):
            db['clips'].insert([{'clip': good}, {'clip': value}]).execute()
    assert db['clips'].count().execute() == 1 and stored(db) == before


@pytest.mark.backends('any')
def test_frames_are_encoded_to_mp4_on_insert(db):
    frames = [np.full((24, 32, 3), c, np.uint8) for c in COLOURS]
    gradient = np.tile(np.arange(0, 250, 10, dtype=np.uint8)[None, :, None], (9, 1, 3))  # odd sizes: 4:4:4 colour
    db.apply(Table('clips', fields={'name': 'str', 'clip': 'video'}))
    db['clips'].insert([{'name': 'list', 'clip': frames}, {'name': 'array', 'clip': np.stack(frames[:3])},
                        {'name': 'video', 'clip': Video.from_frames([gradient] * 2, fps=10)}]).execute()
    rows = {r['name']: r['clip'] for r in db['clips'].select().execute()}
    assert (rows['list'].format, rows['list'].codec, rows['list'].fps, rows['list'].frame_count) == ('mp4', 'h264', 24, 6)
    assert_colours(rows['list'].frames(), COLOURS)
    assert_colours(rows['array'].frames(), COLOURS[:3])
    assert (rows['video'].width, rows['video'].height, rows['video'].fps) == (25, 9, 10)
    assert np.abs(next(rows['video'].frames()).astype(int) - gradient).max() <= TOLERANCE
    with pytest.raises(InvalidValue, match=r'frame 1: expected a uint8 RGB array .* \(24, 32, 3\), got uint8 of shape \(8'):
        Video.from_frames([frames[0], frames[0][:8]])
    with pytest.raises(InvalidValue, match=r'frame 0: .* got uint8 of shape \(24, 32\)'):
        Video.from_frames([frames[0][:, :, 0]])
    with pytest.raises(InvalidValue, match='fps must be a positive number'):
        Video.from_frames(frames, fps=0)
    with pytest.raises(InvalidValue, match="cannot be encoded with 'no-such-codec'"):
        Video.from_frames(frames, codec='no-such-codec')


def test_videos_travel_over_the_rest_api_by_reference(tmp_path):
    from fastapi.testclient import TestClient

    from superduper import superduper
    from superduper.server import create_app
    from superduper.server.codec import to_json
    from superduper.server.settings import ServeSettings

    data = clip()
    db = superduper(f'sqlite://{tmp_path}/db.sqlite', artifact_store=f'filesystem://{tmp_path}/a', progress=False)
    try:
        db.apply(Table('clips', fields={'name': 'str', 'clip': 'video'}))
        db.apply(ObjectModel('count-frames', object=frame_count, serve=True, input_type='video'))
        with TestClient(create_app(db, ServeSettings(anonymous='write'))) as c:
            sent = {'$base64': base64.b64encode(data).decode()}
            c.post('/api/v1/tables/clips/rows', json={'rows': [{'name': 'a', 'clip': sent}]}).raise_for_status()
            row = c.post('/api/v1/tables/clips/select', json={'filter': {'name': 'a'}}).json()['rows'][0]
            digest = hashlib.sha256(data).hexdigest()
            assert row['clip'] == {'$artifact': digest, 'url': f'/api/v1/artifacts/{digest}?media_type=video/mp4',
                                   'media_type': 'video/mp4'}
            got = c.get(row['clip']['url'])
            assert got.content == data and got.headers['content-type'] == 'video/mp4'  # a browser can play it
            assert c.get(f'/api/v1/artifacts/{digest}').headers['content-type'] == 'application/octet-stream'
            refused = c.get(f'/api/v1/artifacts/{digest}?media_type=text/html')  # never served as a page
            assert refused.status_code == 422 and 'text/html' in refused.json()['error']
            bad = c.post('/api/v1/tables/clips/rows', json={'rows': [{'name': 'b', 'clip': {'$base64': 'AAAA'}}]})
            assert bad.status_code == 422 and "table 'clips', rows[0].clip: not a valid video" in bad.json()['error']
            predicted = c.post('/api/v1/models/count-frames/predict', json={'input': sent})  # the model gets a Video
            assert predicted.json() == {'output': len(COLOURS)}
            bad = c.post('/api/v1/models/count-frames/predict', json={'input': {'$base64': 'AAAA'}})
            assert bad.status_code == 422 and "model 'count-frames', input: expected a video" in bad.json()['error']
        assert db['clips'].count().execute() == 1
    finally:
        db.close()
    assert to_json(Video(data)) == {'$base64': base64.b64encode(data).decode(), 'media_type': 'video/mp4'}


def test_without_pyav_a_video_names_the_extra_to_install(monkeypatch):
    import sys

    from superduper.base.exceptions import MissingDependency

    monkeypatch.setitem(sys.modules, 'av', None)  # as if PyAV were not installed
    with pytest.raises(MissingDependency, match=r"pip install 'superduper\[video\]'"):
        Video(b"any bytes").check()
