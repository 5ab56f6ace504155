"""The engine: LoRA files, base pipelines, and the reconciler that brings a live diffusers pipeline to
a PIPELINE handle's state. One job per module:

LoRA files
    records.py    the records formats/ and the rest share (`LoraFile`, `LoraModule`, `LoraFileError`,
                  `Coverage`)
    lora_file.py  read and check one file, named by its format family (`load`, `build`)
    store.py      the content-addressed cache of parsed files, hashed in threads (`read_lora`)
    summary.py    the human description behind `loragraph inspect` and LoRAInfo
    coverage.py   which of a file's modules land on a pipeline, and why not (asks the file's family)
    fit.py        which built-in model a file fits
    formats/      the format families and their registry (`FORMATS`); the contract (`Family`) and the
                  plain families' defaults (diffusers loads them) in family.py, one module of key rules
                  per plain family (kohya, diffusers, diffusers-old, peft, xlabs), and lycoris/: files
                  diffusers cannot load, parsed, placed, built with peft and exported per module
Pipelines and state
    components.py the component names, once
    config.py     the one configuration object (environment read once, passed down)
    pipelines.py  base pipelines: sources, building, the LRU of live ones
    state.py      the immutable handles and the records in them, weights included
    transitions.py  one pure function per LoRA node: handle in, new handle out
    noise_schedulers.py  the Sampler's scheduler names
The reconciler
    reconcile.py  `realize`: the diff, the order of steps, the rollback
    live.py       the live-pipeline record (`LivePipeline`, `LoraOperationError`) and the helpers
                  every step shares (timing, quiet loading, peft tuner layers of any family)
    loading.py    load a file (coverage check, then its family's `load`)
    hotswap.py    load into a parked adapter's layers instead
    activation.py `set_adapters` and the text-encoder switch
    fusion.py     fuse with exact unfuse
    weight_schedule.py  per-step adapter weights at sampling time (never reconciled)
    fence/        every touch of a private diffusers/peft name, with its public fallback
engine.py         what the nodes call
"""
