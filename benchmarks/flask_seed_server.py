"""The seed notebook's Flask server on a bundle: one ``session.run`` per request (benchmarks/serve.py's baseline).

The seed's ``/predict`` (multipart field ``file`` → ``{"class_id", "class_name"}``), with the seed's
torchvision transforms replaced by the bundle's own preprocessing, on Flask's threaded server.

    python benchmarks/flask_seed_server.py BUNDLE [PORT]    # prints {"url": ...} once listening
"""

from __future__ import annotations

import json
import sys

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from onnx_pipeline.runtime import Bundle


def main() -> None:
    bundle = Bundle.load(sys.argv[1])
    app = Flask(__name__)

    @app.route("/predict", methods=["POST"])
    def predict() -> object:
        img_bytes = request.files["file"].read()
        sample = bundle.preprocess(img_bytes)
        logits = bundle.session.run([bundle.output_name], {bundle.input_name: sample[None]})[0]
        class_id = int(bundle.probabilities(logits)[0].argmax())
        return jsonify({"class_id": class_id, "class_name": bundle.class_name(class_id)})

    server = make_server("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0, app, threaded=True)
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_port}"}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
