"""The web explorer: pages and a keyless read-only JSON API served by the gateway, whose pages
verify every block they show in the browser (``services/gateway/web``)."""
