"""What the DICOM heatmap costs: the DICOM path's throughput with the heatmap Secondary Capture on
(``CXR_DICOM_HEATMAP=sc``: Grad-CAM + blend + caption + a second object to send) against off (the SR alone), in
one process, in ABBA turns; and the cost's parts measured alone (Grad-CAM, SC render, SR render).

Each turn sends ``--images`` CR films to the real app by STOW-RS (in-process ASGI client, ``--concurrency``
requests at a time) and waits until every result has been delivered by C-STORE to a pynetdicom sink: a turn is
the full DICOM path (receive, gate, model, render, send). The node's mode is switched between turns; the model,
the batcher and the sink stay the same. Prints images/s per mode, the on/off ratio and the heatmap cost per
image (ms).

The JSON ``/predict`` path is unchanged by the heatmap work (it does not call Grad-CAM unless explain=true);
measure it against the base revision with ``python benchmarks/ab_code.py --base <rev> --connections 1``.

Usage: ``python benchmarks/dicom_heatmap.py`` (about 2 minutes on 2 cores), ``--rounds 3 --images 16
--max-side 2048 --concurrency 4``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def film_bytes(path: Path, max_side: int) -> bytes:
    """A real X-ray as a 12-bit CR object (what a modality writes), longest side at most ``max_side``."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    image = Image.open(path).convert("L")
    scale = min(1.0, max_side / max(image.size))
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    stored = np.rint(np.asarray(image, dtype=np.float64) / 255 * 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Mark", "BENCH1", "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.BodyPartExamined, ds.ViewPosition = "CR", 1, 1, "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Sink:
    """A C-STORE destination that counts SRs (one per result, whatever the mode)."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

        self.srs = 0
        self.arrived = threading.Condition()
        ae = AE(ae_title="BENCH_SINK")
        ae.add_supported_context(Comprehensive3DSRStorage)
        ae.add_supported_context(SecondaryCaptureImageStorage)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self.store)])
        self.port = self.server.server_address[1]

    def store(self, event: object) -> int:
        if event.request.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34":  # type: ignore[attr-defined]
            with self.arrived:
                self.srs += 1
                self.arrived.notify_all()
        return 0

    def wait_for(self, count: int, timeout: float = 600) -> None:
        with self.arrived:
            if not self.arrived.wait_for(lambda: self.srs >= count, timeout):
                raise TimeoutError(f"{self.srs} of {count} results arrived")


async def turn(client: object, films: list[bytes], sink: Sink, concurrency: int) -> float:
    """Seconds from the first STOW-RS request to the last result delivered."""
    from app.dicomweb import encode_multipart

    target = sink.srs + len(films)
    gate = asyncio.Semaphore(concurrency)

    async def one(film: bytes) -> None:
        body, content_type = encode_multipart([film])
        async with gate:
            response = await client.post("/dicomweb/studies", content=body,  # type: ignore[attr-defined]
                                         headers={"Content-Type": content_type})
        if response.status_code != 200:
            raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(one(film) for film in films))
    await asyncio.to_thread(sink.wait_for, target)
    return time.perf_counter() - started


def set_mode(app: object, mode: str) -> None:
    node = app.state.dicom_node  # type: ignore[attr-defined]
    node.settings = node.settings.model_copy(update={"dicom_heatmap": mode})
    node.heatmap = mode != "off"


async def parts(app: object, film: bytes, repeats: int = 10) -> dict[str, float]:
    """Median ms of each part of the heatmap's cost, alone: Grad-CAM, the SC, the SR (for scale)."""
    from app.renderers import dicom_heatmap, dicom_sr

    dataplane = app.state.dataplane  # type: ignore[attr-defined]
    source = dicom_sr.read_source(film)
    timings: dict[str, list[float]] = {"predict (no map)": [], "predict + Grad-CAM": [], "SC render": [],
                                       "SR render": []}
    for _ in range(repeats):
        started = time.perf_counter()
        await dataplane.predict_image(film)
        timings["predict (no map)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        prediction = await dataplane.predict_image(film, explain=True)
        timings["predict + Grad-CAM"].append(time.perf_counter() - started)
        started = time.perf_counter()
        sc = dicom_heatmap.render(prediction, film, source, 50_000_000)
        timings["SC render"].append(time.perf_counter() - started)
        started = time.perf_counter()
        dicom_sr.build_sr(prediction, source, heatmaps=[sc])
        timings["SR render"].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in timings.items()}


async def main_async(args: argparse.Namespace) -> int:
    import httpx

    from app.main import create_app
    from app.settings import Settings

    paths = sorted((args.data / "fullres_samples").glob("*/*.jpeg"))[: args.images]
    if not paths:
        print(f"no films under {args.data / 'fullres_samples'}", file=sys.stderr)
        return 2
    films = [film_bytes(path, args.max_side) for path in paths]
    sink = Sink()
    settings = Settings(model_store=REPO / "model_store", access_log=False, dicomweb_receive=True,
                        dicom_queue_size=max(64, len(films)), dicom_destination_host="127.0.0.1",
                        dicom_destination_port=sink.port, dicom_destination_ae_title="BENCH_SINK",
                        audit_enabled=False, max_batch_files=4)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        while app.state.manager.not_ready_reason() is not None:
            if app.state.manager.load_error is not None:
                raise RuntimeError(app.state.manager.load_error)
            await asyncio.sleep(0.1)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cxr", timeout=600) as client:
            print(f"{len(films)} CR films (longest side <= {args.max_side}), concurrency {args.concurrency}, "
                  f"{args.rounds} ABBA rounds")
            for mode in ("sc", "off"):  # warm both: Grad-CAM tracing, first-use imports
                set_mode(app, mode)
                await turn(client, films[:2], sink, args.concurrency)
            seconds: dict[str, list[float]] = {"sc": [], "off": []}
            for index in range(args.rounds):
                for mode in (("sc", "off", "off", "sc") if index % 2 == 0 else ("off", "sc", "sc", "off")):
                    set_mode(app, mode)
                    seconds[mode].append(await turn(client, films, sink, args.concurrency))
            rate = {mode: len(films) / statistics.median(values) for mode, values in seconds.items()}
            per_image = {mode: 1000 * statistics.median(values) / len(films) for mode, values in seconds.items()}
            print(f"DICOM path, heatmap off (SR only): {rate['off']:.2f} images/s ({per_image['off']:.0f} ms/image)")
            print(f"DICOM path, heatmap on  (SC + SR): {rate['sc']:.2f} images/s ({per_image['sc']:.0f} ms/image)")
            print(f"throughput on/off: {rate['sc'] / rate['off']:.3f}; heatmap cost per image: "
                  f"{per_image['sc'] - per_image['off']:.0f} ms (wall, at concurrency {args.concurrency})")
            for name, ms in (await parts(app, films[0])).items():
                print(f"  alone, one film: {name:20s} {ms:7.1f} ms")
    sink.server.shutdown()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=12, help="films per turn")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each: 2 turns per mode)")
    parser.add_argument("--max-side", type=int, default=2048, help="longest side of the CR films, px")
    parser.add_argument("--concurrency", type=int, default=4, help="STOW-RS requests in flight")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
