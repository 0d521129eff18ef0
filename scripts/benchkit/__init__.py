"""The measurements, over tskit: `make bench` (its sections, variant archives per format, agreement with fp32
from served answers, the whole job in process, a LitServe peer), `make tune`, `make soak`, `make optimize`
and `make profile`."""
