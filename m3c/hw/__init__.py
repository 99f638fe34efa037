"""The hardware units' Python side: the MAC array's geometry (geometry.py), each unit's DDR
segments, packing and cost model (units.py), and the DDR layout and top-function calls of a
compiled kernel (layout.py). The units themselves are templates/hls/units/*.h.j2."""
