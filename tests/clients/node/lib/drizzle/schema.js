'use strict';
// What drizzle-kit reads (drizzle.config.js: schema). The prefix and the optional column come from the environment
// so that each test has tables of its own.
const { makeTables } = require('./tables');

module.exports = makeTables(process.env.NILE_DRIZZLE_PREFIX || 'drizzle',
  { withDueOn: process.env.NILE_DRIZZLE_DUE_ON === '1', declareNile: process.env.NILE_DRIZZLE_DECLARE_NILE === '1' });
