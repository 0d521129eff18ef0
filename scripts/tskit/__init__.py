"""The package under every command: model kinds, declarations, sources, formats and archives (`make model`,
`make archives`), the server and the one client (HTTP and gRPC), the one load loop, the KServe layout."""
