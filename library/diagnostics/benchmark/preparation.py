"""Data-preparation benchmarks (each a worker task run in its own process):

  caching   latent caching through library.data.caching.latent_caching (decode, resize, encode, write
            npz) vs the VAE's raw encode rate on the same bucket-sized pixels, interleaved
  text_caching  text-encoder output caching: one caption per forward (every image, as the trainer did
            before batching) vs distinct captions in batches of 16 (library/data/text_encoder_cache.encode_texts),
            for all-distinct captions and for a DreamBooth set of few distinct ones, interleaved
  tagging   finetune/tag_images_by_wd14_tagger.py on a generated WD14-shaped ONNX model
  indexing  10,000 generated images: metadata merge (merge_all_to_metadata) and the trainer's
            dataset index (sizes from headers, buckets), with Python-heap peaks at 1/4 and all
            of the images to show memory is flat in the number of images
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import time
import tracemalloc
from pathlib import Path

import numpy as np

from library.diagnostics.benchmark.measure import summarize

ROOT = Path(__file__).resolve().parents[3]


def _load_script(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0, caption: str | None = None) -> Path:
    """`count` noisy gradient PNGs of `size` (content that compresses like photos, not flat colour)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    for index in range(count):
        path = folder / f"img{index:05d}.png"
        if path.exists():
            continue
        pixels = ramp * rng.random(3, dtype=np.float32) + rng.normal(0, 20, (height, width, 3)).astype(np.float32)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, compress_level=1)
        if caption is not None:
            path.with_suffix(".caption").write_text(f"{caption} {index % 7}", encoding="utf-8")
            path.with_suffix(".txt").write_text(f"tag{index % 5}, tag{index % 11}", encoding="utf-8")
    return folder


# --- latent caching vs raw VAE encode ---------------------------------------------------------------
def run_caching(params: dict) -> dict:
    import torch

    from library.data.buckets import BucketManager, resize_and_crop
    from library.data.images import SkipLog, load_rgb
    from library.data.caching.latent_caching import CachingOptions, plan_jobs, run_jobs
    from library.data.caching.latent_encoding import load_vae_for_caching, pixels_to_tensor, vae_fingerprint

    if params.get("threads"):
        torch.set_num_threads(params["threads"])
    resolution, batch = params["resolution"], params["batch_size"]
    folder = Path(params["images"])
    images = {p.stem: p for p in sorted(folder.glob("*.png"))}
    vae = load_vae_for_caching(params["model"], None, torch.float32, "cpu")
    fingerprint = vae_fingerprint(vae)
    buckets = BucketManager.single((resolution, resolution))
    options = CachingOptions(batch_size=batch, workers=params.get("workers", 2), overwrite=True)
    jobs = plan_jobs(images, buckets, fingerprint, options, SkipLog())
    # the raw rate: only vae.encode on the very pixels caching feeds it (decoded and cropped beforehand)
    crops = [resize_and_crop(load_rgb(job.image_path), job.placement) for job in jobs]
    pixel_batches = [crops[i:i + batch] for i in range(0, len(crops), batch)]
    raw, cached = [], []
    for _ in range(params["repeats"]):
        start = time.perf_counter()
        with torch.no_grad():
            for chunk in pixel_batches:
                vae.encode(pixels_to_tensor(chunk)).latent_dist.mean.numpy()
        raw.append(len(crops) / (time.perf_counter() - start))
        for job in jobs:
            job.problem = "overwrite requested"
        report = run_jobs(vae, jobs, options, SkipLog())
        cached.append(report.encoded / report.seconds)
    ratios = [c / r for c, r in zip(cached, raw)]
    return {"images": len(crops), "batch_size": batch, "resolution": resolution, "workers": options.workers,
            "raw_encode_images_per_s": summarize(raw), "caching_images_per_s": summarize(cached), "ratio": summarize(ratios)}


# --- text-encoder output caching ---------------------------------------------------------------------
def _text_encoders(size: str, dtype):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from library.diagnostics.benchmark.models import CONFIGS
    from library.models.sdxl_architecture import SDXL_TE1_CONFIG, SDXL_TE2_CONFIG

    te1, te2 = (SDXL_TE1_CONFIG, SDXL_TE2_CONFIG) if size == "real" else CONFIGS[size][1:3]
    torch.manual_seed(0)
    encoders = (CLIPTextModel(CLIPTextConfig(**te1)), CLIPTextModelWithProjection(CLIPTextConfig(**te2)))
    return [encoder.to(dtype).eval().requires_grad_(False) for encoder in encoders]


def run_text_caching(params: dict) -> dict:
    import torch

    from library.data.caching.text_encoder_cache import encode_texts
    from library.precisions import DTYPES
    from library.models.tokenizers import packaged_clip_tokenizers

    if params.get("threads"):
        torch.set_num_threads(params["threads"])
    dtype = DTYPES[params.get("dtype", "fp32")]
    encoders = _text_encoders(params["size"], dtype)
    tokenizers = packaged_clip_tokenizers()
    count = params["images"]
    words = ["red dress", "smiling", "outdoors", "night sky", "short hair", "looking at viewer", "from side", "city"]
    results = {}
    for name, distinct in (("distinct_captions", count), ("dreambooth_captions", params.get("dreambooth_distinct", 4))):
        captions = [f"ohwx woman, {words[i % len(words)]}, {words[(i * 3 + 1) % len(words)]}, photo {i % distinct}"
                    for i in range(count)]
        one, batched = [], []
        for _ in range(params["repeats"]):
            start = time.perf_counter()
            for caption in captions:  # before: every image's caption in its own forward
                encode_texts(tokenizers, encoders, [caption], batch_size=1, progress=False)
            one.append(count / (time.perf_counter() - start))
            start = time.perf_counter()
            encode_texts(tokenizers, encoders, captions, batch_size=16, progress=False)
            batched.append(count / (time.perf_counter() - start))
        results[name] = {"distinct": len(set(captions)), "one_per_forward_images_per_s": summarize(one),
                         "batched_images_per_s": summarize(batched), "speedup": summarize([b / o for b, o in zip(batched, one)])}
    return {"size": params["size"], "dtype": params.get("dtype", "fp32"), "images": count, "batch_size": 16, **results}


# --- tagging --------------------------------------------------------------------------------------
def write_tagger(folder: Path, size: int = 448, tags: int = 64) -> Path:
    """A WD14-shaped ONNX model ([batch, size, size, 3] -> [batch, tags]): strided conv, global
    pooling, a dense layer and a sigmoid, plus selected_tags.csv. Small compute, real I/O shapes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["input_1:0"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["conv"], strides=[8, 8], kernel_shape=[8, 8]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "dense", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(
        nodes, "bench_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", tags])],
        initializer=[numpy_helper.from_array(rng.normal(0, 0.01, (16, 3, 8, 8)).astype(np.float32), "w"),
                     numpy_helper.from_array(rng.normal(0, 0.1, (16, tags)).astype(np.float32), "dense"),
                     numpy_helper.from_array(np.zeros(tags, np.float32), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{i},tag_{i},{9 if i < 4 else 0},100" for i in range(tags)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def run_tagging(params: dict) -> dict:
    script = _load_script("finetune/tag_images_by_wd14_tagger.py")
    folder = Path(params["images"])
    count = len(list(folder.glob("*.png")))
    rates = []
    for _ in range(params["repeats"]):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            script.main([str(folder), "--model_dir", params["tagger"], "--batch_size", "8", "--max_data_loader_n_workers", "2",
                         "--caption_extension", ".bench_tags"])
        rates.append(count / (time.perf_counter() - start))
    return {"images": count, "images_per_s": summarize(rates), "model": "generated WD14-shaped ONNX (448 px input, light compute)"}


# --- indexing of many images ------------------------------------------------------------------------
def _index_once(folder: Path, meta: Path, resolution: int) -> dict:
    from argparse import Namespace

    from library.data.images import SkipLog
    from library.training.config.dataset_config import dataset_specs
    from library.training.config.options import OPTIONS
    from library.training.inputs.train_items import build_items

    merge = _load_script("finetune/merge_all_to_metadata.py")
    meta.unlink(missing_ok=True)
    tracemalloc.start()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        merge.main([str(folder), str(meta)])
    merged = time.perf_counter()
    _, merge_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    args = Namespace(**{name: option.default for name, option in OPTIONS.items()})
    args.train_data_dir, args.in_json = str(folder), str(meta)
    args.resolution, args.enable_bucket = (resolution, resolution), True
    args.min_bucket_reso, args.max_bucket_reso, args.bucket_reso_steps = 64, 1024, 64
    items = build_items(dataset_specs(args), SkipLog(), [])
    done = time.perf_counter()
    _, index_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"images": len(items), "merge_seconds": merged - start, "index_seconds": done - merged,
            "total_seconds": done - start, "merge_python_peak_bytes": merge_peak, "index_python_peak_bytes": index_peak,
            "buckets": len({item.bucket for item in items})}


def run_indexing(params: dict) -> dict:
    """Index a quarter of the images and all of them; time per image and heap peak per image."""
    root = Path(params["images"])
    results = {}
    for name in ("quarter", "all"):
        results[name] = _index_once(root / name, root / f"meta_{name}.json", params.get("resolution", 512))
    q, a = results["quarter"], results["all"]
    results["python_peak_per_image_bytes"] = {"quarter": q["index_python_peak_bytes"] / max(q["images"], 1),
                                              "all": a["index_python_peak_bytes"] / max(a["images"], 1)}
    return results


def generate_index_images(root: Path, count: int) -> Path:
    """`count` tiny PNGs of 8 aspect ratios with captions and tags, split into quarter/ (count/4,
    hard-linked) and all/ (count)."""
    sizes = [(64, 64), (64, 96), (96, 64), (48, 80), (80, 48), (72, 72), (56, 96), (96, 56)]
    everything = root / "all"
    everything.mkdir(parents=True, exist_ok=True)
    existing = len(list(everything.glob("*.png")))
    if existing < count:
        from PIL import Image

        rng = np.random.default_rng(1)
        for index in range(count):
            path = everything / f"img{index:05d}.png"
            if path.exists():
                continue
            width, height = sizes[index % len(sizes)]
            Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, compress_level=1)
            path.with_suffix(".caption").write_text(f"a generated picture number {index}", encoding="utf-8")
            path.with_suffix(".txt").write_text(f"tag{index % 5}, tag{index % 13}", encoding="utf-8")
    quarter = root / "quarter"
    quarter.mkdir(exist_ok=True)
    for path in sorted(everything.iterdir()):
        stem_index = int(path.stem[3:]) if path.stem.startswith("img") else 0
        target = quarter / path.name
        if stem_index < count // 4 and not target.exists():
            target.hardlink_to(path)
    return root
