"""The core shared by the indexer and the service. Imports neither app and no gRPC."""
