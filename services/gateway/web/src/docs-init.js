// The API reference: Swagger UI (from the swagger-ui-dist npm package, served by the gateway)
// over the gateway's own /openapi.json. Nothing is loaded from another origin.
/* global SwaggerUIBundle */
window.addEventListener("DOMContentLoaded", () => {
  // @ts-ignore -- defined by swagger-ui-bundle.js
  SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null });
});
