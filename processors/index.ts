/** Stage name -> processor factory. */
import type { StageName } from '../topology.ts';
import type { StageFactory } from './contract.ts';
import { dedupe } from './dedupe.ts';
import { deliver } from './deliver.ts';
import { enrich } from './enrich.ts';
import { ingest } from './ingest.ts';
import { outcome } from './outcome.ts';
import { route } from './route.ts';
import { throttle } from './throttle.ts';

export const PROCESSORS: Record<StageName, StageFactory> = { ingest, enrich, dedupe, throttle, route, deliver, outcome };
