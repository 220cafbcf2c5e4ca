"""curate.images.open_rgb with a target size: JPEGs decoded at a DCT scale (1/2, 1/4, 1/8) that still
covers the target, everything else (and every bad input) as the full-size decode treats it."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from curate.errors import CurateError
from curate.images import check_decode, dct_scale, decode_target, open_rgb


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: 1/f (pink) noise per channel, so it has edges at every scale."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    falloff = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(w, h))
    chans = []
    for _ in range(3):
        spec = falloff * np.exp(2j * np.pi * rng.random((h, w)))
        x = np.real(np.fft.ifft2(spec))
        chans.append((x - x.mean()) / (x.std() + 1e-9))
    arr = np.stack(chans, -1) * 40 + 128
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def model_view(im: Image.Image, size: int = 224) -> np.ndarray:
    """open_clip's resize (shortest side, bicubic) + centre crop, as float pixels."""
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), np.float32)


def test_dct_scale_never_goes_below_the_target():
    assert dct_scale(512, 512, 224) == 2
    assert dct_scale(1024, 768, 224) == 2          # 768 // 4 = 192 < 224
    assert dct_scale(2000, 1800, 224) == 8
    assert dct_scale(447, 1000, 224) == 1           # 447 // 2 = 223: no scale
    assert dct_scale(1000, 447, 224, fit="long") == 4
    assert dct_scale(1000, 1000, None) == 1
    for w in range(200, 2100, 37):
        for h in (230, 600, 1500):
            s = dct_scale(w, h, 224)
            assert min(w, h) // s >= 224 or s == 1


@pytest.mark.parametrize("w,h", [(512, 512), (1024, 768), (2000, 1500), (700, 1900)])
def test_fast_covers_the_target_and_stays_close_to_exact(w, h):
    data = jpeg(photo(w, h, seed=w))
    fast, exact = open_rgb(data, 224), open_rgb(data)
    assert exact.size == (w, h)
    assert min(fast.size) >= 224                      # the final resize only shrinks
    scale = dct_scale(w, h, 224)
    assert fast.size == (-(-w // scale), -(-h // scale))
    diff = np.abs(model_view(fast) - model_view(exact))
    assert diff.mean() < 4.0, diff.mean()              # of 255, after the model's resize


def test_fast_equals_exact_when_the_image_is_already_small():
    data = jpeg(photo(300, 260))
    assert np.array_equal(np.asarray(open_rgb(data, 224)), np.asarray(open_rgb(data)))
    tiny = jpeg(photo(100, 80))                         # smaller than the target: never upsampled
    out = open_rgb(tiny, 224)
    assert out.size == (100, 80)
    assert np.array_equal(np.asarray(out), np.asarray(open_rgb(tiny)))


def test_exact_mode_is_the_full_decode():
    data = jpeg(photo(1024, 1024))
    assert decode_target(224, "exact") is None
    assert decode_target(224, "fast") == 224
    assert np.array_equal(np.asarray(open_rgb(data, decode_target(224, "exact"))), np.asarray(open_rgb(data)))
    with pytest.raises(CurateError, match="--decode"):
        check_decode("quick")


def test_progressive_and_restart_marker_jpegs():
    im = photo(1024, 800, seed=3)
    for data in (jpeg(im, progressive=True), jpeg(im, restart_marker_blocks=4)):
        assert b"\xff\xc2" in data or b"\xff\xdd" in data
        fast, exact = open_rgb(data, 224), open_rgb(data)
        assert fast.size == (512, 400) and exact.size == (1024, 800)
        assert np.abs(model_view(fast) - model_view(exact)).mean() < 4.0


def test_cmyk_and_ycck_jpegs_decode_as_rgb():
    data = jpeg(photo(900, 600, seed=5).convert("CMYK"))
    at = data.find(b"Adobe")
    assert at > 0
    ycck = data[:at + 11] + b"\x02" + data[at + 12:]  # the Adobe marker's transform byte: 2 = YCCK
    for d in (data, ycck):
        fast, exact = open_rgb(d, 224), open_rgb(d)
        assert fast.mode == exact.mode == "RGB"
        assert fast.size == (450, 300)
        assert np.abs(model_view(fast) - model_view(exact)).mean() < 4.0


def test_greyscale_and_exif_orientation_as_exact():
    grey = jpeg(photo(1200, 800).convert("L"))
    fast = open_rgb(grey, 224)
    assert fast.mode == "RGB" and fast.size == (600, 400)
    im = photo(1000, 500, seed=9)
    exif = im.getexif()
    exif[0x0112] = 6                                    # rotate 90: stored landscape, seen portrait
    rotated = jpeg(im, exif=exif.tobytes())
    fast, exact = open_rgb(rotated, 224), open_rgb(rotated)
    assert exact.size == (500, 1000) and fast.size == (250, 500)
    assert np.abs(model_view(fast) - model_view(exact)).mean() < 4.0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
def test_formats_without_a_dct_decode_as_today(fmt):
    buf = io.BytesIO()
    photo(800, 600).save(buf, fmt)
    data = buf.getvalue()
    assert np.array_equal(np.asarray(open_rgb(data, 224)), np.asarray(open_rgb(data)))
    assert open_rgb(data, 224).size == (800, 600)


def test_sixteen_bit_png_as_today():
    arr = (np.linspace(0, 65535, 640 * 480).reshape(480, 640)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    assert np.array_equal(np.asarray(open_rgb(buf.getvalue(), 224)), np.asarray(open_rgb(buf.getvalue())))


def test_truncated_jpeg_fails_in_both_modes_never_half_an_image():
    data = jpeg(photo(1024, 1024))
    for cut in (len(data) // 2, len(data) - 200):
        with pytest.raises(OSError):
            open_rgb(data[:cut])
        with pytest.raises(OSError):
            open_rgb(data[:cut], 224)


def _sof_size(data: bytes, w: int, h: int) -> bytes:
    """``data`` with its SOF header claiming ``w`` x ``h``."""
    i = 2
    while True:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return data[:i + 5] + struct.pack(">HH", h, w) + data[i + 9:]
        i += 2 + length


def test_a_header_that_lies_about_its_size():
    data = jpeg(photo(1024, 768))
    # more pixels than the data holds: libjpeg fills the rest with grey (a warning, not an error)
    # today, and the fast decode does the same at its scale
    bigger = _sof_size(data, 2048, 1536)
    exact, fast = open_rgb(bigger), open_rgb(bigger, 224)
    assert exact.size == (2048, 1536) and fast.size == (512, 384)
    assert np.asarray(exact)[-8:, -8:].max() == np.asarray(exact)[-8:, -8:].min() == 128
    assert np.abs(model_view(fast) - model_view(exact)).mean() < 4.0
    smaller = _sof_size(data, 1024, 600)               # fewer: the header's size, in both modes
    assert open_rgb(smaller).size == (1024, 600)
    assert open_rgb(smaller, 224).size == (512, 300)


def test_the_decompression_bomb_guard_holds_before_any_decode(monkeypatch):
    data = jpeg(photo(1024, 1024))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)   # 2x of it raises, as in every decode
    for size in (None, 224):
        with pytest.raises(Image.DecompressionBombError):
            open_rgb(data, size)


def test_encoders_say_the_size_they_need():
    open_clip = pytest.importorskip("open_clip")
    from curate.embed.backends import resize_size

    _, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    assert resize_size(pre) == 224
    from torchvision import transforms as T

    assert resize_size(T.Compose([T.Resize((256, 320)), T.ToTensor()])) == 320
    assert resize_size(T.Compose([T.CenterCrop(224), T.Resize(224)])) is None   # crop first: full decode
    assert resize_size(T.Compose([T.ToTensor()])) is None



def test_embed_records_the_mode_and_a_change_of_mode_re_embeds(tmp_path, tiny_clip_spec):
    from curate.embed.stage import EmbedConfig, embed_shards
    from curate.embed.store import read_embeddings
    from curate.shards import ShardWriter

    with ShardWriter(tmp_path / "shards", prefix="s", maxcount=10) as w:
        for i in range(4):
            w.write({"__key__": f"k{i}", "jpg": jpeg(photo(800, 600, seed=i)), "txt": "a photo"})
    out, part = tmp_path / "emb", tmp_path / "emb" / "img_emb" / "img_emb_0.npy"

    def run(mode: str) -> dict:
        return embed_shards(tmp_path / "shards", out, EmbedConfig(model=tiny_clip_spec, batch_size=2, decode=mode),
                            workers=1)

    assert run("fast")["decode"] == "fast"
    keys, fast = read_embeddings(out)
    before = part.stat().st_mtime_ns
    run("fast")
    assert part.stat().st_mtime_ns == before                         # same mode: resumed, nothing redone
    info = run("exact")
    assert info["decode"] == "exact" and info["counts"]["images"] == 4
    assert part.stat().st_mtime_ns != before                         # another mode: embedded again
    keys2, exact = read_embeddings(out)
    assert keys2 == keys
    assert not np.array_equal(fast, exact)
    assert float((fast * exact).sum(1).min()) > 0.9
    with pytest.raises(CurateError, match="--decode"):
        run("quick")


# -- thumbnails and `curate search --image` decode at the size they need (issue 26) ----------------
def test_thumbnail_of_a_1024px_jpeg_decodes_at_a_reduced_dct_scale(monkeypatch):
    from PIL.JpegImagePlugin import JpegImageFile

    from curate.images import thumbnail

    data = jpeg(photo(1024, 768))
    drafts = []
    real = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda im, mode, size: drafts.append(size) or real(im, mode, size))
    thumb = thumbnail(data, 112)
    assert drafts == [(128, 96)]  # 1/8 scale: its long side 128 still covers 112
    assert thumb.size == (112, 84) and thumb.mode == "RGB"
    assert thumbnail(jpeg(photo(64, 48)), 112).size == (64, 48)  # never upscaled


def test_thumbnail_keeps_exif_orientation():
    from curate.images import thumbnail

    im = photo(1024, 768)
    exif = im.getexif()
    exif[0x0112] = 6  # stored landscape, seen portrait
    assert thumbnail(jpeg(im, exif=exif.tobytes()), 112).size == (84, 112)


def test_search_by_image_decodes_as_embed_does(tmp_path, tiny_clip_spec, monkeypatch, capsys):
    """`curate search --image`: the query is opened by Encoder.open_image (the decode `curate embed`
    used for the indexed images: near the model's input size), not at full size."""
    import json

    import polars as pl

    from curate.embed.backends import Encoder, load_model
    from curate.embed.store import part_paths, save_npy, save_parquet
    from curate.fsutil import write_json
    from curate.index import build_index, search_cmd

    enc = load_model(tiny_clip_spec, "cpu")
    query = jpeg(photo(512, 384))
    mat = np.random.default_rng(0).standard_normal((5, enc.dim)).astype(np.float32)
    mat[2] = enc.encode_images([enc.open_image(query)])[0]
    mat /= np.linalg.norm(mat, axis=1, keepdims=True)
    emb, meta = part_paths(tmp_path / "emb", "0")
    save_npy(emb, mat)
    keys = [f"k{i}" for i in range(5)]
    save_parquet(meta, pl.DataFrame({"image_path": keys, "caption": [""] * 5, "key": keys}))
    write_json(tmp_path / "emb" / "embeddings.json", {"model": tiny_clip_spec, "dim": enc.dim})
    idx = build_index(tmp_path / "emb", tmp_path / "idx")
    (tmp_path / "q.jpg").write_bytes(query)
    sizes = []
    real = Encoder.open_image
    monkeypatch.setattr(Encoder, "open_image",
                        lambda self, data, *a, **k: (lambda im: sizes.append(im.size) or im)(real(self, data, *a, **k)))
    search_cmd(idx, image=tmp_path / "q.jpg", k=1, as_json=True, device="cpu")
    assert sizes == [(64, 48)]  # 1/8 scale: short side 48 still covers the model's 32 px (full size: 512 x 384)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["key"] == "k2"
