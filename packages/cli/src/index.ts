export { main, EXIT, type CliEnv } from './program.js';
