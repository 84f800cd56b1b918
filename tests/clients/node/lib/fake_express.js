'use strict';
// Just enough of Express's request/response to drive a route handler (req, res, next) without an HTTP server: the
// database side is real, only the HTTP plumbing is left out.

/** Calls `route(req, res, next)`; resolves {status, body}, or rejects with the error the route passed to next(). */
function callRoute(route, req) {
  return new Promise((resolve, reject) => {
    const res = {
      statusCode: 200,
      status(code) {
        this.statusCode = code;
        return this;
      },
      json(body) {
        resolve({ status: this.statusCode, body });
        return this;
      },
    };
    const next = (err) => (err ? reject(err) : reject(new Error('route called next() without an error')));
    Promise.resolve(route(req, res, next)).catch(reject);
  });
}

module.exports = { callRoute };
