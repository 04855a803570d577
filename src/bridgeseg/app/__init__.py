"""The application layer: the web app behind `bridgeseg serve` (`bridgeseg.app.server`, needing the `app` extra) and
the offline quickstart behind `bridgeseg demo` (`bridgeseg.app.demo`)."""
