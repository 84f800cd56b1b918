'use strict';
// drizzle-kit's configuration for the suite (drizzle-kit push / generate --config drizzle.config.js). The database
// URL, the output folder and the tables come from the test that runs the CLI.
const prefix = process.env.NILE_DRIZZLE_PREFIX || 'drizzle';
module.exports = {
  dialect: 'postgresql',
  schema: './lib/drizzle/schema.js',
  out: process.env.NILE_DRIZZLE_OUT || './.out/drizzle',
  dbCredentials: { url: process.env.NILE_DRIZZLE_URL },
  schemaFilter: ['public'],
  tablesFilter: [`${prefix}_*`],
  migrations: { schema: 'public', table: `${prefix}_drizzle_migrations` },
  verbose: true,
  strict: false,
};
