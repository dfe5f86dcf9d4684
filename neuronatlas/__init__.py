"""NeuronAtlas: a neuron knowledge service for vision models.

Import layout (see README, Architecture):
- ``neuronatlas.core``    record schema, store, embedder, configuration, errors, analysis maths
- ``neuronatlas.indexer`` (folder ``indexer/``) turns a model + probe set into neuron records
- ``neuronatlas.service`` (folder ``service/``) the gRPC API, client and server
- ``neuronatlas.v1``      protobuf/gRPC code generated from ``protos/neuronatlas/v1``
"""

__version__ = "0.1.0"
