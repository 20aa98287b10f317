"""mcm-train: the host-side trainer for mcm-edge (`mcm-train --help`).

Layout (each package depends only on those listed after it; no package imports one that imports it back):
    cli.py      the `mcm-train` commands              -> all below
    training/   loop, trainers, frozen base, warm start, distill -> data, nets, contract
    export/     ONNX + test vectors, fixtures, import  -> nets, contract
    data/       palettes, frame -> map rules, scenes   -> contract
    nets/       U-Net, MCM, ControlNet baseline         -> (torch only)
    contract/   modalities + cond, schedule, model.toml -> (torch only)
"""
