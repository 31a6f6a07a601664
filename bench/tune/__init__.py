"""`resnet-serve tune`: find the serving settings that give the most throughput within a p99 latency SLO.

The search space is runtime × precision × instances × intra-op threads × max batch × queue delay, restricted
to what exists on this machine (`candidates`). Every variant first passes the parity gate (`parity`): its
logits on real images against ONNX Runtime FP32, held to the release tolerance of its precision. Each
candidate is then started as the real server and measured with bench's own load generator (`measure`), in
stages (`search`), within a time budget, resumably. `report` prints the table, draws the plot and writes the
winner as a server config (and into a model repository).
"""
