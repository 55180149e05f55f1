"""edgefleet camera client: stream frames to an edge server and receive results as they come.

Import the parts you need (`client.stream`, `client.sources`, `client.kserve`); this package
`__init__` stays empty so `edgefleet --help` never pays for grpc, OpenCV or numpy.
"""
