module healthcheck-go

go 1.24
