export { writeFileAtomic } from './atomic.js';
export { JsonlFile } from './jsonl.js';
export { resultsJson, resultsMarkdown, writeResults } from './results.js';
export { runInDirectory, RUN_FILES } from './run-dir.js';
