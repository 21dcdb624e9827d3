from onnx_pipeline.cli import main

main()
