"""`jaxcerv serve`: a local web page that scores photographs with predict's own code path.

``app.create_app`` builds the Starlette application; ``static/`` holds the page (plain HTML,
JavaScript and CSS, nothing fetched from the internet). Needs the ``serve`` extra:
``pip install '.[serve]'``.
"""
